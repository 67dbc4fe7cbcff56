"""LoRaWAN FUOTA: firmware to LoRa nodes by multicast fragments with FEC (TS003/4/5)."""
