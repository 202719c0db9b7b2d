# The container reaper (agent/src/pod/reaper.rs). argv, as the launcher builds it:
#   [0] testbed-reaper [1] run-container [2] --pod [3] POD [4] --container [5] NAME
#   [6] --child [7] PID [8] --exit-file [9] PATH [10] --via [11] TMP
    .globl _start
    .text
_start:
    mov %rsp, %rbp
    sub $64, %rsp
    cmpq $12, (%rbp)          # argc: anything else is not the launcher's call
    jne fail
    mov 64(%rbp), %rsi        # argv[7]: the child's PID in decimal -> r12d
    xor %r12d, %r12d
1:  movzbl (%rsi), %eax
    sub $48, %eax
    cmp $9, %eax
    ja 2f
    imul $10, %r12d, %r12d
    add %eax, %r12d
    inc %rsi
    jmp 1b
2:  mov $14, %eax             # rt_sigprocmask(SIG_BLOCK, {HUP, INT, TERM, CHLD}, NULL, 8)
    xor %edi, %edi
    lea mask(%rip), %rsi
    xor %edx, %edx
    mov $8, %r10d
    syscall
3:  mov $61, %eax             # wait4(child, &status, WNOHANG, NULL)
    mov %r12d, %edi
    lea 56(%rsp), %rsi
    mov $1, %edx
    xor %r10d, %r10d
    syscall
    test %rax, %rax
    jg exited
    cmp $-4, %rax             # EINTR: again
    je 3b
    test %rax, %rax
    jl fail                   # ECHILD: not our child
    mov $128, %eax            # rt_sigtimedwait({HUP, INT, TERM, CHLD}, NULL, NULL, 8)
    lea mask(%rip), %rdi
    xor %esi, %esi
    xor %edx, %edx
    mov $8, %r10d
    syscall
    cmp $17, %eax             # SIGCHLD, or an error (EINTR): wait4 again
    je 3b
    test %eax, %eax
    jle 3b
    mov %eax, %esi            # kill(child, sig): HUP, INT and TERM go to the container
    mov $62, %eax
    mov %r12d, %edi
    syscall
    jmp 3b
exited:
    mov 56(%rsp), %eax        # wait status -> exit code in ebx
    mov %eax, %ebx
    and $0x7f, %ebx           # the terminating signal, 0 for a normal exit
    jz 4f
    add $128, %ebx            # killed by signal n: 128 + n
    jmp 5f
4:  movzbl 57(%rsp), %ebx     # exited: (status >> 8) & 0xff
5:  lea 40(%rsp), %rsi        # "CODE\n", built backwards from 40(%rsp)
    movb $10, (%rsi)
    mov %ebx, %eax
    mov $10, %ecx
6:  xor %edx, %edx
    div %ecx
    add $48, %edx
    dec %rsi
    mov %dl, (%rsi)
    test %eax, %eax
    jnz 6b
    mov %rsi, %r13            # text and its length
    lea 41(%rsp), %r14
    sub %rsi, %r14
    mov $2, %eax              # open(TMP, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644)
    mov 96(%rbp), %rdi
    mov $0x80241, %esi
    mov $0644, %edx
    syscall
    test %eax, %eax
    js 7f
    mov %eax, %r15d
    mov $1, %eax              # write(fd, text, length)
    mov %r15d, %edi
    mov %r13, %rsi
    mov %r14, %rdx
    syscall
    mov $3, %eax              # close(fd)
    mov %r15d, %edi
    syscall
    mov $82, %eax             # rename(TMP, PATH)
    mov 96(%rbp), %rdi
    mov 80(%rbp), %rsi
    syscall
7:  mov $231, %eax            # exit_group(code)
    mov %ebx, %edi
    syscall
fail:
    mov $231, %eax            # exit_group(127), as the launcher does when it cannot go on
    mov $127, %edi
    syscall
    .balign 8
mask: .quad 0x14003
