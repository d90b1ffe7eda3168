/**
 * The host side of the guest init protocol, version 1 (binding/guest/protocol.h
 * is the guest side; every number here must agree with it).
 *
 * The channel carries frames in both directions: `u8 type, u32 little-endian
 * payload length, payload`. The guest sends READY once its init runs and the
 * channel is open, then the command's output as STDOUT/STDERR frames, an ERROR
 * frame when the command could not be started, and one EXIT frame last.
 * @module
 */
import { NacelleError } from '../errors';

/** Version of the protocol this host speaks. */
export const PROTOCOL_VERSION = 1;

/** Bytes in a frame header: type (1) + payload length (4, little-endian). */
export const FRAME_HEADER_BYTES = 5;

/** Largest payload the host sends in one frame (the guest init never sends more than this either). */
export const MAX_FRAME_PAYLOAD = 65536;

/** Frame types. Guest→host: 1–5; host→guest: 16–18. */
export const FrameType = {
  /** Guest→host: bytes the command wrote to stdout. */
  STDOUT: 1,
  /** Guest→host: bytes the command wrote to stderr. */
  STDERR: 2,
  /** Guest→host: `i32le exitCode, i32le signal (0 if none)`; a signal death has exitCode 128+sig. */
  EXIT: 3,
  /** Guest→host: UTF-8 text, e.g. `exec "/bin/nope": No such file or directory (ENOENT)`. */
  ERROR: 4,
  /** Guest→host: empty; the init runs and the channel is open. */
  READY: 5,
  /** Host→guest: data for the command's stdin. */
  STDIN: 16,
  /** Host→guest: empty; close the command's stdin. */
  STDIN_EOF: 17,
  /** Host→guest: `i32le` signal number, sent to the command's process (`stop`, `kill`). */
  SIGNAL: 18,
} as const;

/** One of the {@link FrameType} numbers. */
export type FrameTypeNumber = (typeof FrameType)[keyof typeof FrameType];

/** A decoded frame. */
export interface Frame {
  /** The frame type (see {@link FrameType}). */
  type: number;
  /** The payload (may be empty). */
  payload: Buffer;
}

/** The payload of an EXIT frame. */
export interface GuestExit {
  /** The command's exit code; 128 + n when signal n ended it. */
  exitCode: number;
  /** The signal number that ended it, or 0. */
  signal: number;
}

/** One frame as bytes. */
export function encodeFrame(type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (!Number.isInteger(type) || type < 0 || type > 255) throw new NacelleError(`frame type ${type} is not a byte`, { code: 'ERR_INVALID_ARG' });
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt8(type, 0);
  header.writeUInt32LE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

/** A SIGNAL frame: the guest init sends `signal` to the command. */
export function encodeSignal(signal: number): Buffer {
  const payload = Buffer.alloc(4);
  payload.writeInt32LE(signal, 0);
  return encodeFrame(FrameType.SIGNAL, payload);
}

/** STDIN frames for `data`, split so no payload exceeds {@link MAX_FRAME_PAYLOAD}. */
export function encodeStdin(data: Buffer): Buffer[] {
  const frames: Buffer[] = [];
  for (let off = 0; off < data.length; off += MAX_FRAME_PAYLOAD) {
    frames.push(encodeFrame(FrameType.STDIN, data.subarray(off, off + MAX_FRAME_PAYLOAD)));
  }
  return frames;
}

/** Reads an EXIT frame's payload. */
export function decodeExit(payload: Buffer): GuestExit {
  if (payload.length < 8) throw new NacelleError(`EXIT frame payload has ${payload.length} bytes, expected 8`, { code: 'ERR_PROTOCOL' });
  return { exitCode: payload.readInt32LE(0), signal: payload.readInt32LE(4) };
}

/** Builds an EXIT frame's payload (used by tests and fake guests). */
export function encodeExit(exit: GuestExit): Buffer {
  const b = Buffer.alloc(8);
  b.writeInt32LE(exit.exitCode, 0);
  b.writeInt32LE(exit.signal, 4);
  return b;
}

/**
 * Splits a byte stream into frames, whatever the chunk boundaries: feed it
 * chunks with {@link FrameDecoder.push}, get whole frames back.
 */
export class FrameDecoder {
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  /** Bytes received that do not yet make a whole frame. */
  get buffered(): number {
    return this.#pendingBytes;
  }

  /** Adds a chunk; returns the frames it completed, in order. Each byte is copied at most once per frame. */
  push(chunk: Buffer): Frame[] {
    if (chunk.length > 0) {
      this.#pending.push(chunk);
      this.#pendingBytes += chunk.length;
    }
    const frames: Frame[] = [];
    while (this.#pendingBytes >= FRAME_HEADER_BYTES) {
      const header = this.#peek(FRAME_HEADER_BYTES);
      const length = header.readUInt32LE(1);
      if (this.#pendingBytes < FRAME_HEADER_BYTES + length) break;
      const whole = this.#take(FRAME_HEADER_BYTES + length);
      frames.push({ type: whole.readUInt8(0), payload: whole.subarray(FRAME_HEADER_BYTES) });
    }
    return frames;
  }

  /** The first `n` buffered bytes (a copy when they span chunks), without consuming them. */
  #peek(n: number): Buffer {
    const first = this.#pending[0]!;
    if (first.length >= n) return first.subarray(0, n);
    const out = Buffer.alloc(n);
    let filled = 0;
    for (const chunk of this.#pending) {
      filled += chunk.copy(out, filled, 0, Math.min(chunk.length, n - filled));
      if (filled === n) break;
    }
    return out;
  }

  /** Removes and returns the first `n` buffered bytes (a copy owned by the caller). */
  #take(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let used = 0;
    while (filled < n) {
      const head = this.#pending[used]!;
      const part = Math.min(head.length, n - filled);
      head.copy(out, filled, 0, part);
      filled += part;
      if (part === head.length) used++;
      else this.#pending[used] = head.subarray(part);
    }
    this.#pending.splice(0, used); // once: shifting chunk by chunk would be quadratic
    this.#pendingBytes -= n;
    return out;
  }
}
