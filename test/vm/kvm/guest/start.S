/*
 * start.S: entry points of nacelle's freestanding test guest.
 *
 *   0x100000  .head: the bzImage's 32-bit entry (unused: hlt; jmp), padded
 *             with hlt to 0x200 bytes
 *   0x100200  startup_64: the bzImage 64-bit entry (long mode, paging on,
 *             first 4 GiB identity-mapped, rsi = boot_params)
 *   .text32   pvh_start: the PVH entry (32-bit protected mode, paging off,
 *             ebx = hvm_start_info), named by the Xen ELF note below
 *
 * Both zero .bss, set up a stack in .noinit and call into guest.c.
 */

#define SEL_CODE64 0x10
#define SEL_DATA 0x18

	.section .head, "ax"
	.code32
	.globl startup_32
startup_32:
1:	hlt
	jmp 1b
	.org 0x200, 0xf4

	.code64
	.globl startup_64
startup_64:
	cli
	cld
	/* zero .bss (rsi, the boot_params pointer, survives rep stosq) */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $3, %ecx
	xorl %eax, %eax
	rep stosq
	movq $stack_top, %rsp
	xorl %ebp, %ebp
	movq %rsi, %rdi
	call linux64_main
2:	cli
	hlt
	jmp 2b

/* ---- PVH: 32-bit entry ---------------------------------------------------- */

	.section .text32, "ax"
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	/* zero .bss (ebx, the hvm_start_info pointer, survives rep stosl) */
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl

	/* PML4: entry 0 -> PDPT, the other 511 empty */
	movl $pvh_pml4, %edi
	movl $(pvh_pdpt + 0x3), (%edi)
	movl $0, 4(%edi)
	movl $1, %ecx
1:	movl $0, (%edi,%ecx,8)
	movl $0, 4(%edi,%ecx,8)
	incl %ecx
	cmpl $512, %ecx
	jb 1b

	/* PDPT: entries 0..3 -> the four page directories, the rest empty */
	movl $pvh_pdpt, %edi
	movl $(pvh_pd + 0x3), %eax
	xorl %ecx, %ecx
2:	movl %eax, (%edi,%ecx,8)
	movl $0, 4(%edi,%ecx,8)
	addl $0x1000, %eax
	incl %ecx
	cmpl $4, %ecx
	jb 2b
3:	movl $0, (%edi,%ecx,8)
	movl $0, 4(%edi,%ecx,8)
	incl %ecx
	cmpl $512, %ecx
	jb 3b

	/* page directories: 2048 2 MiB pages (present, writable, PS) = 4 GiB */
	movl $pvh_pd, %edi
	movl $0x83, %eax
	xorl %ecx, %ecx
4:	movl %eax, (%edi,%ecx,8)
	movl $0, 4(%edi,%ecx,8)
	addl $0x200000, %eax
	incl %ecx
	cmpl $2048, %ecx
	jb 4b

	movl $pvh_pml4, %eax
	movl %eax, %cr3
	movl %cr4, %eax
	orl $0x20, %eax			/* CR4.PAE */
	movl %eax, %cr4
	movl $0xc0000080, %ecx		/* EFER */
	rdmsr
	orl $0x100, %eax		/* EFER.LME */
	wrmsr
	lgdt pvh_gdt_desc
	movl %cr0, %eax
	orl $0x80000001, %eax		/* CR0.PG | CR0.PE */
	movl %eax, %cr0
	ljmp $SEL_CODE64, $pvh_start64

	.code64
pvh_start64:
	movl $SEL_DATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl %eax, %fs
	movl %eax, %gs
	movq $stack_top, %rsp
	xorl %ebp, %ebp
	movl %ebx, %edi
	call pvh_main
5:	cli
	hlt
	jmp 5b

/* ---- interrupt entry: 256 stubs, 16 bytes apart, and a common path -------- */

/*
 * isr_stubs + 16 * v is vector v's entry. Vectors without a CPU error code
 * push a 0 in its place, then every stub pushes its vector, so isr_common sees
 * one frame shape: saved registers, vector, error code, then what the CPU pushed
 * (rip, cs, rflags, rsp, ss). In 64-bit mode the CPU aligns rsp to 16 before
 * pushing those 40 bytes; 8 + 8 + 9 * 8 more keeps it 16-aligned at the call.
 */
	.text
	.code64
	.balign 16
	.globl isr_stubs
isr_stubs:
	vec = 0
	.rept 256
	.balign 16
	.if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq $0
	.endif
	pushq $vec
	jmp isr_common
	vec = vec + 1
	.endr

isr_common:
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	cld
	movq %rsp, %rdi
	call isr_dispatch
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
	addq $16, %rsp		/* vector and error code */
	iretq

/* ---- SMP: the AP's real-mode trampoline, copied to 0x8000 ------------------ */

	.section .rodata, "a"
	.code16
	.globl ap_trampoline, ap_trampoline_end
ap_trampoline:
	cli
	xorw %ax, %ax
	movw %ax, %ds
1:	lock incl 0x8ff0
	jmp 1b
ap_trampoline_end:
	.code64

/* ---- GDT for the PVH path (Linux's selectors: 0x10 code64, 0x18 data) ------- */

	.section .rodata, "a"
	.balign 16
pvh_gdt:
	.quad 0
	.quad 0
	.quad 0x00af9a000000ffff	/* 0x10: 64-bit code */
	.quad 0x00cf92000000ffff	/* 0x18: flat data */
pvh_gdt_end:
	.balign 8
pvh_gdt_desc:
	.word pvh_gdt_end - pvh_gdt - 1
	.long pvh_gdt

/* ---- the PVH note: XEN_ELFNOTE_PHYS32_ENTRY = pvh_start ------------------- */

	.section .note.Xen, "a", @note
	.balign 4
	.long 4				/* namesz */
	.long 4				/* descsz */
	.long 18			/* type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.long pvh_start

	/* zeros right after the note (guest.ld keeps them there): a reader that
	   loads the 4-byte desc as 8 bytes still gets pvh_start */
	.section .notepad, "a", @progbits
	.quad 0

/* ---- stack and page tables: not zeroed, not in the image ------------------- */

	.section .noinit, "aw", @nobits
	.balign 4096
pvh_pml4:
	.skip 4096
pvh_pdpt:
	.skip 4096
pvh_pd:
	.skip 4 * 4096
	.balign 16
stack_bottom:
	.skip 16384
stack_top:

	.section .note.GNU-stack, "", @progbits
