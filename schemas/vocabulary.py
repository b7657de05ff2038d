"""The label vocabulary of books: the subjects and academic levels classify assigns (and configuration filters on)."""

SUBJECTS = ("math", "physics", "chemistry", "biology", "medicine", "cs", "economics", "other")
LEVELS = ("primary_school", "high_school", "undergraduate", "graduate", "research")
