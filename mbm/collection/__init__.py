"""What the Engine knows about a collection, kept apart from the Engine itself: the checks its entry
points make before any model loads (:mod:`.checks`), which model it holds and its fingerprint
(:mod:`.model`), and what ``mbm info`` reports of it (:mod:`.info`)."""
