"""Device hubs and their wire contract v1, the device registry, and the emulator."""
