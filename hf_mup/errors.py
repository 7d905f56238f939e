"""The one exception type hf_mup raises for bad input; its message always names the fix."""


class MuPError(ValueError):
    """Bad input to hf_mup: an unsupported model, a base width that does not fit, a plain optimizer, ..."""
