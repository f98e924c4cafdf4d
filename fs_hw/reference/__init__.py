"""The numpy reference backend: the semantics every other backend reproduces."""
