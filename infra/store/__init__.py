"""The store layer: every SQL statement of Lifeline, one module per aggregate, each a set of named async functions."""
