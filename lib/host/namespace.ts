/**
 * Namespace operations on the calling thread.
 * @module
 */
import { fromNativeError, InvalidArgumentError } from '../errors';
import { native } from '../native';

/** A Linux namespace kind by its short name, as in /proc/<pid>/ns. */
export type NamespaceName = 'pid' | 'mount' | 'uts' | 'ipc' | 'net' | 'cgroup' | 'user';

/** Every namespace name nacelle knows, in the order a container creates them. */
export const NAMESPACE_NAMES: readonly NamespaceName[] = ['user', 'mount', 'pid', 'uts', 'ipc', 'net', 'cgroup'];

/** The CLONE_NEW* bit of a namespace name; `mnt` is accepted for `mount`. */
export function namespaceFlag(name: string): number {
  const c = native().constants;
  switch (name) {
    case 'pid':
      return c.CLONE_NEWPID;
    case 'mount':
    case 'mnt':
      return c.CLONE_NEWNS;
    case 'uts':
      return c.CLONE_NEWUTS;
    case 'ipc':
      return c.CLONE_NEWIPC;
    case 'net':
      return c.CLONE_NEWNET;
    case 'cgroup':
      return c.CLONE_NEWCGROUP;
    case 'user':
      return c.CLONE_NEWUSER;
    default:
      throw new InvalidArgumentError(`unknown namespace '${name}' (known: ${NAMESPACE_NAMES.join(', ')})`, { code: 'EINVAL' });
  }
}

/**
 * setns(2) on the calling thread. Node is multithreaded, so joining a user or
 * mount namespace fails with EINVAL here; spawn a child with `joinNamespaces`
 * instead.
 * @param fd - an fd of /proc/<pid>/ns/<kind> or a pidfd
 * @param namespace - the expected kind, or undefined for any
 */
export function setns(fd: number, namespace?: NamespaceName): void {
  const nstype = namespace === undefined ? 0 : namespaceFlag(namespace);
  try {
    native().setns(fd, nstype);
  } catch (err) {
    throw fromNativeError(err);
  }
}

/**
 * sethostname(2): changes the hostname of the caller's UTS namespace (the
 * host's, from a Node process that has not unshared one).
 */
export function sethostname(name: string): void {
  try {
    native().sethostname(name);
  } catch (err) {
    throw fromNativeError(err);
  }
}
