"""SMP (MCUmgr Simple Management Protocol) over a serial line: the ``smp-serial`` transport."""
