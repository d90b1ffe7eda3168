/**
 * Progress events of pulls and pushes: one stream of events per operation,
 * each naming a blob and how far it has come, enough to draw a progress bar
 * per layer.
 * @module
 */
import type { Digest } from '../oci/digest';

/** What a progress event is about. */
export type ProgressKind = 'manifest' | 'config' | 'layer';

/**
 * Where a blob is:
 * - `exists`: the other side already has it, nothing moves;
 * - `mounted`: the registry linked it from another repository, nothing moves;
 * - `downloading` / `uploading`: bytes are moving (`done` of `total`);
 * - `retrying`: a transfer broke and is being resumed or restarted;
 * - `done`: the blob is complete and verified.
 */
export type ProgressStatus = 'exists' | 'mounted' | 'downloading' | 'uploading' | 'retrying' | 'done';

/** One progress report. */
export interface ProgressEvent {
  /** Pull or push. */
  operation: 'pull' | 'push';
  /** The kind of blob. */
  kind: ProgressKind;
  /** The blob's digest. */
  digest: Digest;
  /** What is happening to it. */
  status: ProgressStatus;
  /** Bytes of this blob done so far. */
  done: number;
  /** The blob's size in bytes. */
  total: number;
  /**
   * Blob bytes (configs and layers, not manifests) moved over the network by
   * the whole operation so far. A pull of an image the store already holds
   * ends with 0.
   */
  transferred: number;
}

/** A callback receiving progress events; it must not throw (what it throws is ignored). */
export type ProgressHandler = (event: ProgressEvent) => void;

/** @internal Calls the handler, swallowing what it throws so a bad callback cannot break a transfer. */
export function report(handler: ProgressHandler | undefined, event: ProgressEvent): void {
  if (!handler) return;
  try {
    handler(event);
  } catch {
    // a progress callback has no say in the transfer
  }
}
