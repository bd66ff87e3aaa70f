"""The methods of the family, one module each, behind small interfaces: predictors, pseudo-labellers."""
