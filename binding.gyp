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
        "binding/bpf.c",
        "binding/monitor/wait.c",
        "binding/kvm/probe.c",
        "binding/kvm/vm.c",
        "binding/kvm/vcpu.c",
        "binding/kvm/boot.c",
        "binding/kvm/acpi.c",
        "binding/kvm/serial.c",
        "binding/kvm/i8042.c",
        "binding/kvm/snapshot.c",
        "binding/kvm/napi.c",
        "binding/kvm/virtq.c",
        "binding/kvm/virtio_mmio.c",
        "binding/kvm/blk.c",
        "binding/kvm/console.c"
      ],
      "defines": [
        "_GNU_SOURCE",
        "NAPI_VERSION=8"
      ],
      "cflags": [
        "-std=gnu11",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-Wno-missing-field-initializers",
        "-fvisibility=hidden"
      ],
      "cflags!": [
        "-std=gnu99"
      ]
    },
    {
      "target_name": "nacelle-monitor",
      "type": "executable",
      "sources": [
        "binding/monitor/main.c",
        "binding/monitor/wait.c"
      ],
      "defines": [
        "_GNU_SOURCE"
      ],
      "cflags": [
        "-std=gnu11",
        "-O2",
        "-Wall",
        "-Wextra"
      ],
      "cflags!": [
        "-std=gnu99"
      ],
      "ldflags": [
        "-static",
        "-s"
      ]
    }
  ]
}
