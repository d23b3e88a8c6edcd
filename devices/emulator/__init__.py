"""The device emulator: synthetic hubs that speak the wire contract."""
