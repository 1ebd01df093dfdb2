#!/bin/sh
# PID 1 of the lab's user-mode-linux guest. The root file system is the
# host's (hostfs); everything the run writes goes to $LABDIR on the host.
#
# It prepares the guest (proc, sys, a private /run, the UML kernel's
# modules), runs the scenario that the host wrote into $LABDIR/scenario.sh,
# records its exit status and powers the guest off. It must never exit: PID 1
# exiting panics the kernel.
#
# Environment (kernel command line words): LABDIR, LABMODROOT (a directory
# holding lib/modules/<release>), LABMODS (comma-separated modules),
# LABOPTMODS (comma-separated modules whose failure is only logged),
# LABTIMEOUT (seconds the scenario may run).

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

poweroff() {
	sync
	echo o >/proc/sysrq-trigger
	while :; do sleep 60; done
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# A private /run: pid files, VICI sockets and named network namespaces of
# the guest must not land in the host's /run.
mount -t tmpfs -o mode=0755 run /run
mkdir -p /run/lock /dev/pts
mount -t devpts devpts /dev/pts 2>/dev/null

if [ -z "$LABDIR" ] || [ ! -d "$LABDIR" ]; then
	echo "lab-init: LABDIR missing" >&2
	poweroff
fi
exec >>"$LABDIR/init.log" 2>&1
echo "lab-init: up $(cat /proc/uptime)"

# modprobe -d reads the UML kernel's modules from LABMODROOT without touching
# the host's /usr/lib/modules.
# shellcheck disable=SC2086
if ! modprobe -d "$LABMODROOT" -a $(echo "$LABMODS" | tr ',' ' '); then
	echo "lab-init: modprobe failed" >&2
	echo 125 >"$LABDIR/exit"
	poweroff
fi
for m in $(echo "$LABOPTMODS" | tr ',' ' '); do
	modprobe -d "$LABMODROOT" "$m" || echo "lab-init: optional module $m not loaded"
done
# Every crypto template lookup would otherwise try to run modprobe for a
# module that does not exist, costing ~170 ms each in UML.
echo >/proc/sys/kernel/modprobe
echo "lab-init: modules loaded $(cat /proc/uptime)"

# scenario.sh sets the positional parameters to the program and its
# arguments (written and quoted by the host).
. "$LABDIR/scenario.sh"
cd "$LABDIR" || poweroff
timeout -k 2 "${LABTIMEOUT:-120}" "$@" >"$LABDIR/scenario.log" 2>&1 </dev/null
echo $? >"$LABDIR/exit"
echo "lab-init: scenario exited $(cat "$LABDIR/exit") $(cat /proc/uptime)"
poweroff
