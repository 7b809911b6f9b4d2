"""Static config checks of the app's settings against known pitfalls (``probe``), and the fix
builders that several probes print (``fixes``)."""
