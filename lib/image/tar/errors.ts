/**
 * The error a layer tar raises when it is unsafe, corrupt or not allowed here.
 * @module
 */
import { NacelleError } from '../../errors';

/**
 * Why a layer was refused:
 * - `ERR_LAYER_UNSAFE`: an entry would write outside the target (absolute name, `..`, a path
 *   through a symlink, a hardlink or whiteout that escapes)
 * - `ERR_LAYER_DEVICE`: a device node while devices are not allowed
 * - `ERR_LAYER_CORRUPT`: a truncated or corrupt gzip stream or tar archive
 * - `ERR_LAYER_INVALID`: a well-formed archive that cannot be applied (a hardlink to a missing
 *   entry, an unknown entry type, a non-directory where a directory is needed)
 */
export type LayerErrorCode = 'ERR_LAYER_UNSAFE' | 'ERR_LAYER_DEVICE' | 'ERR_LAYER_CORRUPT' | 'ERR_LAYER_INVALID';

/** Options of a {@link LayerError}. */
export interface LayerErrorOptions {
  /** Why the layer was refused; default `ERR_LAYER_INVALID`. */
  code?: LayerErrorCode;
  /** The entry name in the archive the error is about, when there is one. */
  path?: string;
  /** The underlying error, if any. */
  cause?: unknown;
}

/** A layer tar could not be packed or applied; `path` names the archive entry involved. */
export class LayerError extends NacelleError {
  /** The entry name in the archive (as written there), when the error is about one entry. */
  readonly path?: string;

  /**
   * @param message - what is wrong, naming the entry
   * @param options - the code, the entry name and the cause
   */
  constructor(message: string, options: LayerErrorOptions = {}) {
    super(message, { code: options.code ?? 'ERR_LAYER_INVALID', cause: options.cause });
    if (options.path !== undefined) this.path = options.path;
  }
}
