"""Chinese NLU building blocks for the Lakala support bot (text normalisation, jieba, spaCy)."""
