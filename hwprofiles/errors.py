"""The error raised for a bad or unknown profile: it names the file, the field and the fix."""


class ProfileError(ValueError):
    """A hardware profile is missing, malformed or unknown. The CLI exits 2 on it."""
