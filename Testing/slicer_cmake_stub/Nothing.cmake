# Slicer_EXTENSION_GENERATE_CONFIG / Slicer_EXTENSION_CPACK: nothing to do for the layout test.
