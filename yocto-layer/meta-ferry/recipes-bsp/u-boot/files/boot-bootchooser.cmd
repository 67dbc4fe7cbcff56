# ferry boot script, scheme "bootchooser" (RAUC-style), U-Boot hush.
#
# Compile:  mkimage -A arm64 -T script -C none -d boot-bootchooser.cmd boot.scr
# Run from the board's default env, e.g.
#   bootcmd=load mmc 0:1 ${scriptaddr} boot.scr; source ${scriptaddr}
# and define there how to boot one slot (the script sets ferry_slot and bootargs):
#   ferry_boot=if test ${ferry_slot} = A; then setenv ferry_part 2; else setenv ferry_part 3; fi; load mmc 0:${ferry_part} ${kernel_addr_r} /boot/Image; booti ${kernel_addr_r} - ${fdtcontroladdr}
#
# Variables (the same as RAUC's bootchooser; ferry writes them from userspace):
#   BOOT_ORDER    boot names to try, in order ("A B")
#   BOOT_A_LEFT   attempts left for slot A (BOOT_B_LEFT likewise)
# The first slot in BOOT_ORDER with attempts left is chosen, its counter goes down by
# one and is saved BEFORE the kernel starts, so a slot that never comes up to
# "ferry mark good" runs out of attempts and the next one in BOOT_ORDER is booted.
# If no slot has attempts left, all counters are reset and the board resets (RAUC's
# contrib/uboot.sh does the same): better a boot loop than a board stuck at the prompt.
# The script also saves ferry_saveenv_canary=1, which ferry checks before the first
# update to prove it reads the env that U-Boot writes.

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

ferry_slot=none
for s in ${BOOT_ORDER}; do
	if test "${ferry_slot}" != none; then
		true
	elif test "${s}" = A; then
		if test ${BOOT_A_LEFT} -gt 0; then
			setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
			ferry_slot=A
		fi
	elif test "${s}" = B; then
		if test ${BOOT_B_LEFT} -gt 0; then
			setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
			ferry_slot=B
		fi
	fi
done

if test "${ferry_slot}" = none; then
	echo "FERRY: no slot has attempts left; resetting attempts"
	setenv BOOT_A_LEFT 3
	setenv BOOT_B_LEFT 3
	saveenv
	reset
fi

setenv ferry_saveenv_canary 1
saveenv
setenv bootargs "${bootargs} rauc.slot=${ferry_slot} ferry.slot=${ferry_slot}"
echo "FERRY: boot slot=${ferry_slot} A_LEFT=${BOOT_A_LEFT} B_LEFT=${BOOT_B_LEFT}"
run ferry_boot
