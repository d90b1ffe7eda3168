/**
 * The error a registry answer turns into when it is neither success nor a
 * plain "not found": it carries the HTTP status and the distribution-spec
 * error codes the registry sent.
 * @module
 */
import { NacelleError, type NacelleErrorOptions } from '../errors';

/** One entry of a distribution-spec error body (`{"errors":[{"code":…,"message":…}]}`). */
export interface RegistryErrorDetail {
  /** The spec's code: `BLOB_UNKNOWN`, `MANIFEST_INVALID`, `UNAUTHORIZED`, `DENIED`, … */
  code: string;
  /** The registry's message. */
  message: string;
}

/** What {@link RegistryError} takes besides the message. */
export interface RegistryErrorOptions extends Partial<NacelleErrorOptions> {
  /** The HTTP status, when the registry answered. */
  status?: number;
  /** The error entries of the registry's answer. */
  details?: RegistryErrorDetail[];
}

/**
 * A registry refused or failed a request. `code` is `ERR_UNAUTHORIZED` (401,
 * credentials missing or rejected, or an endless 401 loop), `ERR_DENIED`
 * (403), `ERR_REGISTRY` (any other failure status), `ERR_INSECURE` (plain
 * HTTP to a host that is neither loopback nor marked insecure) or
 * `ERR_REGISTRY_PROTOCOL` (an answer that breaks the spec).
 */
export class RegistryError extends NacelleError {
  /** The HTTP status, when the registry answered. */
  readonly status?: number;
  /** The error entries of the registry's answer (may be empty). */
  readonly details: RegistryErrorDetail[];

  /**
   * @param message - the request and what went wrong
   * @param options - code, status and the registry's error entries
   */
  constructor(message: string, options: RegistryErrorOptions = {}) {
    super(message, { code: options.code ?? 'ERR_REGISTRY', cause: options.cause });
    if (options.status !== undefined) this.status = options.status;
    this.details = options.details ?? [];
  }
}
