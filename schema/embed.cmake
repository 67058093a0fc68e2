# Generates migrations.cc from the NNNN_name.sql files (run at build time).
file(GLOB sql_files "${SRC_DIR}/[0-9][0-9][0-9][0-9]_*.sql")
list(SORT sql_files)
set(body "")
foreach(f ${sql_files})
  get_filename_component(name ${f} NAME)
  string(SUBSTRING ${name} 0 4 version)
  math(EXPR version "${version}")
  file(READ ${f} sql)
  string(APPEND body "  {${version}, \"${name}\", R\"shardq_sql(${sql})shardq_sql\"},\n")
endforeach()
file(WRITE ${OUT}.tmp "// Generated from schema/*.sql by schema/embed.cmake. Do not edit.
#include \"schema/migrations.h\"

namespace shardq::schema {
namespace {
constexpr Migration kMigrations[] = {
${body}};
}  // namespace

std::span<const Migration> AllMigrations() { return kMigrations; }

}  // namespace shardq::schema
")
file(COPY_FILE ${OUT}.tmp ${OUT} ONLY_IF_DIFFERENT)
