"""The project's performance figures, rerunnable by anyone with ``xpusim bench``."""
