"""The inputs: the unlabelled catalog, labelled stem sets, the demo corpus, and labels."""
