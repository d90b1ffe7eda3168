/**
 * Errors thrown by nacelle. Every error is a {@link NacelleError} whose `code`
 * is either an errno name from the kernel (`ENOENT`, `EBUSY`) or one of
 * nacelle's own `ERR_*` codes, so callers can branch on `err.code`.
 * @module
 */

/** Options accepted by every nacelle error constructor. */
export interface NacelleErrorOptions {
  /** The error's code: an errno name such as `ENOENT`, or an `ERR_*` code. */
  code: string;
  /** The error that caused this one, if any. */
  cause?: unknown;
}

/** The base class of every error nacelle throws. */
export class NacelleError extends Error {
  /** An errno name (`ENOENT`) or one of nacelle's `ERR_*` codes. */
  readonly code: string;

  /**
   * @param message - what went wrong, naming the object (path, digest, container id) involved
   * @param options - the code and the underlying cause
   */
  constructor(message: string, options: NacelleErrorOptions) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code;
  }
}

/** Details of a failed system call. */
export interface SystemCallErrorOptions extends NacelleErrorOptions {
  /** Negative errno, as Node reports it (`-2` for ENOENT). */
  errno: number;
  /** The system call (or step) that failed, e.g. `mount` or `execve`. */
  syscall: string;
  /** The path the call was about, when there was one. */
  path?: string;
}

/** A system call failed; `code` is the errno name. */
export class SystemCallError extends NacelleError {
  /** Negative errno, as Node reports it (`-2` for ENOENT). */
  readonly errno: number;
  /** The system call that failed. */
  readonly syscall: string;
  /** The path the call was about, when there was one. */
  readonly path?: string;

  /**
   * @param message - a message in Node's style: `ENOENT: no such file or directory, mount '/x'`
   * @param options - errno details
   */
  constructor(message: string, options: SystemCallErrorOptions) {
    super(message, options);
    this.errno = options.errno;
    this.syscall = options.syscall;
    if (options.path !== undefined) this.path = options.path;
  }
}

/** Starting a process failed at a named step before its program ran. */
export class SpawnError extends SystemCallError {
  /**
   * The step that failed: `execve`, `chdir`, `mount`, `pivot_root`, `write uid_map`,
   * `sethostname`, `namespaces` (argument checks), …
   */
  readonly step: string;

  /**
   * @param message - what failed
   * @param options - errno details plus the failing step
   */
  constructor(message: string, options: SystemCallErrorOptions & { step: string }) {
    super(message, options);
    this.step = options.step;
  }
}

/** An argument was rejected before anything was done (`code` is `ERR_INVALID_ARG`). */
export class InvalidArgumentError extends NacelleError {
  /** @param message - which argument and why */
  constructor(message: string, options: Partial<NacelleErrorOptions> = {}) {
    super(message, { code: 'ERR_INVALID_ARG', ...options });
  }
}

/** Something named does not exist: an image, a container, a kernel (`ERR_NOT_FOUND`). */
export class NotFoundError extends NacelleError {
  /** @param message - what was looked for and where */
  constructor(message: string, options: Partial<NacelleErrorOptions> = {}) {
    super(message, { code: 'ERR_NOT_FOUND', ...options });
  }
}

/** The operation conflicts with existing state: a name in use, a running container (`ERR_CONFLICT`). */
export class ConflictError extends NacelleError {
  /** @param message - what conflicts with what */
  constructor(message: string, options: Partial<NacelleErrorOptions> = {}) {
    super(message, { code: 'ERR_CONFLICT', ...options });
  }
}

/** The object is in the wrong state for the operation, e.g. stopping a stopped container (`ERR_INVALID_STATE`). */
export class StateError extends NacelleError {
  /** @param message - the state found and the one needed */
  constructor(message: string, options: Partial<NacelleErrorOptions> = {}) {
    super(message, { code: 'ERR_INVALID_STATE', ...options });
  }
}

/** Content did not match its digest or size (`ERR_DIGEST_MISMATCH`). */
export class DigestMismatchError extends NacelleError {
  /** @param message - the expected and actual digest or size */
  constructor(message: string, options: Partial<NacelleErrorOptions> = {}) {
    super(message, { code: 'ERR_DIGEST_MISMATCH', ...options });
  }
}

/** The host or input uses something nacelle does not support (`ERR_UNSUPPORTED`). */
export class UnsupportedError extends NacelleError {
  /** @param message - what is unsupported and what would be */
  constructor(message: string, options: Partial<NacelleErrorOptions> = {}) {
    super(message, { code: 'ERR_UNSUPPORTED', ...options });
  }
}

/** An operation ran out of time (`ETIMEDOUT`). */
export class TimeoutError extends NacelleError {
  /** @param message - what was waited for and for how long */
  constructor(message: string, options: Partial<NacelleErrorOptions> = {}) {
    super(message, { code: 'ETIMEDOUT', ...options });
  }
}

/** The shape of the errors the native addon throws. */
interface NativeErrnoError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

function isNativeErrnoError(err: unknown): err is NativeErrnoError {
  return (
    err instanceof Error &&
    typeof (err as Partial<NativeErrnoError>).code === 'string' &&
    typeof (err as Partial<NativeErrnoError>).errno === 'number' &&
    typeof (err as Partial<NativeErrnoError>).syscall === 'string'
  );
}

/**
 * Turns an error thrown by the addon into a {@link SystemCallError}, keeping
 * the original as `cause`. Anything else is returned unchanged.
 * @internal
 */
export function fromNativeError(err: unknown): unknown {
  if (err instanceof NacelleError || !isNativeErrnoError(err)) return err;
  return new SystemCallError(err.message, {
    code: err.code,
    errno: err.errno,
    syscall: err.syscall,
    ...(err.path === undefined ? {} : { path: err.path }),
    cause: err,
  });
}
