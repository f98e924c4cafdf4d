"""The conformance kit as a pytest suite that ships with fs-hw.

Run it against any installed backend, the way nengo ships its test suite to backends::

    pytest --pyargs fs_hw.testing --fs-backend loihi [--fs-backend-config my.toml]

Every scenario of :data:`fs_hw.conformance.SCENARIOS` is lowered and run on the backend
and compared with the reference on the artifact's network and profile: every spike the
target produced (the host-encoded input layer is counted apart) and every read-out
value. Scenarios the backend declares in ``unsupported_scenarios`` are skipped with its
reason; a backend whose ``exactness`` states a tolerance is held to it.
"""
