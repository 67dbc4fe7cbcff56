"""USB DFU 1.1 and ST DfuSe over pyusb: the ``dfu`` transport."""
