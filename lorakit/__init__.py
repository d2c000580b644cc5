"""What every lorakit stage shares: the stage engine, safe image loading, the caption and
`N_name` conventions, and the umbrella CLI. It knows nothing about any one stage."""

__version__ = "0.1.0"
