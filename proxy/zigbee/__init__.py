"""Zigbee OTA Upgrade cluster (0x0019): file format, ZCL frames, an OTA server and adapters."""
