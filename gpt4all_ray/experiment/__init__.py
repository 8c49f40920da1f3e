"""The experiment folder: the only code that knows its file names; records, report, figures."""
