"""fs-hw Loihi target: FS networks as nengo-loihi block programs (emulator, or NxSDK hardware)."""
