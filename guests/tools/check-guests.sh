#!/bin/sh
# Checks built guest kernels against ktvmm's ELF64 boot protocol and against
# what KVM's instruction emulator can execute (guest kernel code is emulated
# on kvm_pvm hosts):
#   - static ELF64 EXEC, entry at or above 1 MiB;
#   - every PT_LOAD has p_paddr == p_vaddr >= 1 MiB;
#   - the only SSE instructions are the plain 16-byte moves the emulator
#     supports (movups/movaps/movdqu/movdqa/movupd/movapd): no SSE
#     arithmetic, no xorps/pxor zeroing, no GPR<->XMM moves.
#
# Usage: tools/check-guests.sh [ELF...]   (default: target/release/<every guest>)
set -eu
cd "$(dirname "$0")/.."
if [ "$#" -eq 0 ]; then
    set -- target/release/selftest target/release/smp target/release/exceptions \
        target/release/lapic-timer target/release/exitcode target/release/hang \
        target/release/triple-fault target/release/pci-enum target/release/pci-testdev \
        target/release/edu target/release/edu-driver target/release/pci-hostile \
        target/release/pc-testdev \
        target/release/serial-testdev target/release/debug-exit
fi
status=0
for elf in "$@"; do
    problems=$(
        readelf -hlW "$elf" | awk -v min=1048576 '
            function hex(s,    i, v) {
                s = tolower(s); sub(/^0x/, "", s); v = 0
                for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
                return v
            }
            /Class:/ && $2 != "ELF64" { print "not ELF64" }
            /^  Type:/ && $2 != "EXEC" { print "not an EXEC (static, non-PIE) file" }
            /Entry point address:/ { if (hex($4) < min) print "entry " $4 " below 1 MiB" }
            /^  INTERP/ { print "has a PT_INTERP (dynamic)" }
            /^  DYNAMIC/ { print "has a PT_DYNAMIC" }
            /^  LOAD/ {
                if ($3 != $4) print "PT_LOAD vaddr " $3 " != paddr " $4
                if (hex($4) < min) print "PT_LOAD at " $4 " below 1 MiB"
            }'
        objdump -d --no-show-raw-insn -M intel "$elf" | awk '
            /^[0-9a-f]+ <.*>:$/ { fn = $2 }
            /xmm|ymm|zmm|[^a-z]mm[0-7]/ {
                n = split($0, part, "\t"); split(part[n], insn, " "); m = insn[1]
                if (m !~ /^mov(ups|aps|dqu|dqa|upd|apd)$/) print "unsupported SIMD instruction " m " in " fn
            }' | sort | uniq -c | sed 's/^ *//'
    )
    if [ -n "$problems" ]; then
        echo "$elf:"
        echo "$problems" | sed 's/^/  /'
        status=1
    else
        echo "$elf: ok"
    fi
done
exit $status
