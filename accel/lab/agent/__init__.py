"""The processes of a lab pod, run from a zipapp of this package (see __main__)."""
