# A stand-in for an installed Slicer's SlicerConfig.cmake, for Testing/test_slicer_packaging.py only:
# the directory variables and the two Python packaging macros an extension of scripted modules uses,
# with the copy/install semantics of Slicer's SlicerMacroBuildScriptedModule.cmake and CTK's
# ctkMacroCompilePythonScript.cmake (no byte compilation, no translations, no tests).
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
set(Slicer_FOUND TRUE)
