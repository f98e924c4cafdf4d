"""fs-hw SpiNNaker target: FS networks as PyNN populations for sPyNNaker, run on NEST here."""
