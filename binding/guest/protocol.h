/*
 * nacelle guest init protocol, version 1. lib/vm/protocol.ts is the host side
 * and must agree with every number here.
 *
 * Config (/.nacelle/config in the initramfs, or argv[1] when not PID 1): a
 * sequence of records `key=value\0`; a value holds any byte but NUL. Keys:
 *   arg (repeated, argv in order)   env (repeated, NAME=VALUE, the exact env)
 *   workdir  uid  gid  group (repeated supplementary gid)  hostname
 *   module (repeated: path of a .ko inside the initramfs, in load order)
 *   channel (default /dev/hvc0)  stdin (`1`: forward the host's stdin)
 *   root + rootfstype (optional: mount this block device as the root, e.g.
 *   /dev/vda erofs) + rootflags (optional mount data)
 * Unknown keys are ignored, so a newer host can add keys an older init skips.
 *
 * Channel frames, both directions: u8 type, u32 little-endian payload length,
 * payload.
 */
#ifndef NACELLE_GUEST_PROTOCOL_H
#define NACELLE_GUEST_PROTOCOL_H

#define NACELLE_PROTOCOL_VERSION 1

#define NACELLE_CONFIG_PATH "/.nacelle/config"
#define NACELLE_DEFAULT_CHANNEL "/dev/hvc0"

/* Frame header: type (1 byte) + length (4 bytes, little-endian). */
#define NACELLE_FRAME_HEADER 5
/* The init never sends a payload larger than this; the host accepts any length. */
#define NACELLE_MAX_PAYLOAD 65536

/* guest -> host */
#define NACELLE_FRAME_STDOUT 1 /* data */
#define NACELLE_FRAME_STDERR 2 /* data */
#define NACELLE_FRAME_EXIT 3   /* i32le exitCode, i32le signal (0 if none); a signal death has exitCode 128+sig */
#define NACELLE_FRAME_ERROR 4  /* UTF-8 text, e.g. exec "/bin/nope": No such file or directory (ENOENT) */
#define NACELLE_FRAME_READY 5  /* empty: the init runs and the channel is open */

/* host -> guest */
#define NACELLE_FRAME_STDIN 16     /* data for the command's stdin */
#define NACELLE_FRAME_STDIN_EOF 17 /* empty: close the command's stdin */
#define NACELLE_FRAME_SIGNAL 18    /* i32le signal number: sent to the command's process (stop, kill) */

/* Exit codes when the command could not be started, as container runtimes use them. */
#define NACELLE_EXIT_NOT_FOUND 127 /* ENOENT, ENOTDIR */
#define NACELLE_EXIT_CANNOT_EXEC 126 /* EACCES and every other setup failure */

#endif
