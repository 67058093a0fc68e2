# Helpers that give every module the same shape: one directory = one library
# `shardq_<name>` with the alias `shardq::<name>`, includes rooted at the repo.

# Aggregates here have default member initializers, so a short brace list is fine.
set(SHARDQ_WARNINGS -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers)

# shardq_cc_library(NAME n SRCS ... DEPS ...)
function(shardq_cc_library)
  cmake_parse_arguments(L "" "NAME" "SRCS;DEPS" ${ARGN})
  add_library(shardq_${L_NAME} STATIC ${L_SRCS})
  add_library(shardq::${L_NAME} ALIAS shardq_${L_NAME})
  target_include_directories(shardq_${L_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(shardq_${L_NAME} PRIVATE ${SHARDQ_WARNINGS})
  target_link_libraries(shardq_${L_NAME} PUBLIC ${L_DEPS})
endfunction()

# shardq_cc_test(NAME n SRCS ... DEPS ... [LABELS ...] [TIMEOUT s])
# One GoogleTest binary, registered with CTest as one test per binary so that
# the binary's global fixtures (a private MariaDB) start once.
function(shardq_cc_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SRCS})
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_options(${T_NAME} PRIVATE ${SHARDQ_WARNINGS})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} GTest::gtest GTest::gmock Threads::Threads)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_test(NAME ${T_NAME} COMMAND ${T_NAME})
  set_tests_properties(${T_NAME} PROPERTIES TIMEOUT ${T_TIMEOUT} LABELS "${T_LABELS}")
endfunction()
