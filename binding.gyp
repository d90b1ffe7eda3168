{
  "targets": [
    {
      "target_name": "nacelle",
      "sources": [
        "binding/binding.c",
        "binding/errors.c",
        "binding/spawn.c",
        "binding/process.c",
        "binding/mount.c",
        "binding/ns.c",
        "binding/fs.c",
        "binding/pty.c",
        "binding/kvm/probe.c"
      ],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags": [
        "-std=gnu11",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-Wno-missing-field-initializers",
        "-fvisibility=hidden"
      ],
      "cflags!": ["-std=gnu99"]
    }
  ]
}
