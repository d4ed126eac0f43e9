"""Human annotation: the answer log, the annotators, the page, and exchange with labeling tools."""
