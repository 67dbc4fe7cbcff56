# ferry boot script, scheme "bootcount" (Mender-style), U-Boot hush.
#
# Needs a U-Boot with CONFIG_BOOTCOUNT_LIMIT=y and CONFIG_BOOTCOUNT_ENV=y: U-Boot then
# increments and saves "bootcount" before autoboot while upgrade_available=1, and runs
# altbootcmd instead of bootcmd once bootcount > bootlimit.
#
# Compile:  mkimage -A arm64 -T script -C none -d boot-bootcount.cmd boot.scr
# Run it from both commands of the board's default env, e.g.
#   bootcmd=load mmc 0:1 ${scriptaddr} boot.scr; source ${scriptaddr}
#   altbootcmd=run bootcmd
# and define how to boot one slot (the script sets ferry_boot_part and bootargs):
#   ferry_boot=if test ${ferry_boot_part} = A; then setenv ferry_part 2; else setenv ferry_part 3; fi; load mmc 0:${ferry_part} ${kernel_addr_r} /boot/Image; booti ${kernel_addr_r} - ${fdtcontroladdr}
#
# Variables (ferry writes them from userspace, all in one env write):
#   ferry_boot_part    slot to boot (A or B)
#   upgrade_available  1 while a new slot is on trial, 0 once ferry marked it good
#   bootcount          boots of the trial slot so far (U-Boot counts)
#   bootlimit          boots allowed before rollback
#   ferry_prev_part    slot to go back to; ferry_failed_part: set here on rollback

test -n "${ferry_boot_part}" || setenv ferry_boot_part A

if test "${upgrade_available}" = 1 && test ${bootcount} -gt ${bootlimit}; then
	echo "FERRY: slot ${ferry_boot_part} did not confirm in ${bootlimit} boot(s); rolling back"
	setenv ferry_failed_part ${ferry_boot_part}
	if test -n "${ferry_prev_part}" && test "${ferry_prev_part}" != "${ferry_boot_part}"; then
		setenv ferry_boot_part ${ferry_prev_part}
	elif test "${ferry_boot_part}" = A; then
		setenv ferry_boot_part B
	else
		setenv ferry_boot_part A
	fi
	setenv upgrade_available 0
	setenv bootcount 0
	setenv ferry_saveenv_canary 1
	saveenv
elif test "${ferry_saveenv_canary}" != 1; then
	setenv ferry_saveenv_canary 1
	saveenv
fi

setenv bootargs "${bootargs} ferry.slot=${ferry_boot_part}"
echo "FERRY: boot slot=${ferry_boot_part} upgrade_available=${upgrade_available} bootcount=${bootcount}"
run ferry_boot
