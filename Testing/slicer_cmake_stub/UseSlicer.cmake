set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})

# CTK: copy each script and resource to DESTINATION_DIR/<its path relative to SOURCE_DIR>; install
# DESTINATION_DIR's contents into INSTALL_DIR (NO_INSTALL_SUBDIR) or DESTINATION_DIR itself (without).
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(_STUB "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT DEFINED _STUB_SOURCE_DIR)
    set(_STUB_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  set(_stub_outputs)
  foreach(_stub_file IN LISTS _STUB_SCRIPTS _STUB_RESOURCES)
    if(IS_ABSOLUTE "${_stub_file}")
      message(FATAL_ERROR "stub: absolute paths are copied to a wrong place by CTK: ${_stub_file}")
    endif()
    if(NOT EXISTS "${_STUB_SOURCE_DIR}/${_stub_file}")
      message(FATAL_ERROR "stub: nonexistent file ${_STUB_SOURCE_DIR}/${_stub_file}")
    endif()
    add_custom_command(OUTPUT ${_STUB_DESTINATION_DIR}/${_stub_file}
      COMMAND ${CMAKE_COMMAND} -E copy ${_STUB_SOURCE_DIR}/${_stub_file} ${_STUB_DESTINATION_DIR}/${_stub_file}
      DEPENDS ${_STUB_SOURCE_DIR}/${_stub_file})
    list(APPEND _stub_outputs ${_STUB_DESTINATION_DIR}/${_stub_file})
  endforeach()
  add_custom_target(Copy${_STUB_TARGET_NAME}PythonFiles ALL DEPENDS ${_stub_outputs})
  if(_STUB_NO_INSTALL_SUBDIR)
    install(DIRECTORY "${_STUB_DESTINATION_DIR}/" DESTINATION "${_STUB_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
  else()
    install(DIRECTORY "${_STUB_DESTINATION_DIR}" DESTINATION "${_STUB_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
  endif()
endmacro()

# Slicer: WITH_SUBDIR puts the files under a folder named after the current source folder.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(_SM "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(_SM_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${_SM_UNPARSED_ARGUMENTS}")
  endif()
  set(_sm_subdir "")
  set(_sm_no_install_subdir NO_INSTALL_SUBDIR)
  if(_SM_WITH_SUBDIR)
    get_filename_component(_sm_subdir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
    set(_sm_subdir "/${_sm_subdir}")
    set(_sm_no_install_subdir "")
  endif()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${_SM_NAME}
    SCRIPTS "${_SM_SCRIPTS}"
    RESOURCES "${_SM_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_sm_subdir}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    ${_sm_no_install_subdir}
    )
endmacro()

function(slicer_add_python_unittest)
endfunction()
