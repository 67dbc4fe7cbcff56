"""Simulated LoRaWAN nodes for FUOTA: the far side of ferry.proxy.lora.

Nothing here imports ferry.proxy: the frame parsers, key derivation, parity lines and
the decoder are written again from the specs (TS003/TS004/TS005), so that a shared
misunderstanding between encoder and decoder cannot pass its own test.
"""
