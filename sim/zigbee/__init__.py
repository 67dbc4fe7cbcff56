"""Simulated Zigbee nodes: the client side of the OTA Upgrade cluster, a population of
them on a lossy shared channel, and a discrete-event clock. Independent of
``ferry.proxy``: it has its own ZCL codec so the two sides check each other."""
