/* The C face as a C program sees it: built against include/egresswatch.h and the plugin library
 * by tests/inprocess.rs. Prints the layout of every struct (compared with the Rust side there),
 * then checks that bad input is an error, never a crash. Usage: abi RULES_DIR TMP_DIR */
#define _GNU_SOURCE
#include "egresswatch.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond, what)                                                  \
  do {                                                                     \
    if (cond) {                                                            \
      printf("ok %s\n", what);                                             \
    } else {                                                               \
      printf("FAILED %s (line %d)\n", what, __LINE__);                     \
      failures++;                                                          \
    }                                                                      \
  } while (0)

static int contains(const char *text, const char *needle) {
  return text != NULL && strstr(text, needle) != NULL;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: abi RULES_DIR TMP_DIR\n");
    return 2;
  }
  printf("layout ew_value %zu %zu %zu %zu %zu %zu\n", sizeof(ew_value), offsetof(ew_value, kind),
         offsetof(ew_value, count), offsetof(ew_value, str), offsetof(ew_value, len),
         offsetof(ew_value, num));
  printf("layout ew_node %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(ew_node),
         offsetof(ew_node, kind), offsetof(ew_node, count), offsetof(ew_node, key),
         offsetof(ew_node, key_len), offsetof(ew_node, str), offsetof(ew_node, len),
         offsetof(ew_node, num));
  printf("layout ew_verdict %zu %zu %zu %zu %zu %zu\n", sizeof(ew_verdict),
         offsetof(ew_verdict, flagged), offsetof(ew_verdict, node_count),
         offsetof(ew_verdict, nodes), offsetof(ew_verdict, route),
         offsetof(ew_verdict, route_len));

  char *error = NULL;
  /* Creation: null, bad UTF-8, oversize, a refused configuration. */
  CHECK(ew_new(NULL, 5, NULL, 0, &error) == NULL && contains(error, "null"), "null config");
  ew_string_free(error);
  error = NULL;
  const char bad_utf8[] = "rules: [\"\xff\xfe\"]";
  CHECK(ew_new(bad_utf8, sizeof bad_utf8 - 1, NULL, 0, &error) == NULL &&
            contains(error, "UTF-8"),
        "bad UTF-8 config");
  ew_string_free(error);
  error = NULL;
  CHECK(ew_new("x", (size_t)1 << 40, NULL, 0, &error) == NULL && contains(error, "limit"),
        "oversize config");
  ew_string_free(error);
  error = NULL;
  const char typo[] = "rules: []\ngeoip: { databse: x }\n";
  CHECK(ew_new(typo, strlen(typo), NULL, 0, &error) == NULL &&
            contains(error, "geoip.databse"),
        "config problem named by key path");
  ew_string_free(error);
  error = NULL;
  CHECK(ew_new(typo, strlen(typo), NULL, 0, NULL) == NULL, "no error pointer");
  const char base_only[] = "x";
  CHECK(ew_new(base_only, 1, NULL, 5, &error) == NULL && contains(error, "base_dir"),
        "null base_dir with a length");
  ew_string_free(error);
  error = NULL;

  /* A real detector, from YAML (the whole configuration: `detector:` is taken from it). */
  char config[4096];
  snprintf(config, sizeof config,
           "outputs: { default: { type: stdout } }\ndetector:\n  rules: [%s]\n"
           "  actions: { default: { annotate: true } }\n",
           argv[1]);
  ew_detector *d = ew_new(config, strlen(config), NULL, 0, &error);
  CHECK(d != NULL, "detector from YAML");
  if (d == NULL) {
    printf("error: %s\n", error);
    return 1;
  }
  size_t n = ew_field_count(d);
  CHECK(n > 5, "field list");
  const char *path = NULL;
  size_t path_len = 0;
  uint32_t kind = 99;
  int has_ip = 0, has_node = 0;
  for (size_t i = 0; i < n; i++) {
    CHECK(ew_field(d, i, &path, &path_len, &kind) == EW_OK, "field entry");
    printf("field %.*s %u\n", (int)path_len, path, kind);
    has_ip |= path_len == 14 && memcmp(path, "destination.ip", 14) == 0 && kind == EW_FIELD_VALUE;
    has_node |= path_len == 15 && memcmp(path, "destination.geo", 15) == 0 && kind == EW_FIELD_NODE;
  }
  CHECK(has_ip && has_node, "destination.ip is a value, destination.geo a node");
  CHECK(ew_field(d, n, &path, &path_len, &kind) == EW_ERR_INVALID &&
            contains(ew_last_error(d), "does not exist"),
        "field index past the end");
  CHECK(ew_field(d, 0, NULL, &path_len, &kind) == EW_ERR_NULL, "null out-pointer");
  CHECK(ew_field(NULL, 0, &path, &path_len, &kind) == EW_ERR_NULL, "null handle");
  CHECK(ew_field_count(NULL) == 0 && ew_last_error(NULL) == NULL, "null handle elsewhere");

  /* Evaluation. */
  ew_value *values = calloc(n + 4, sizeof(ew_value));
  ew_verdict verdict;
  memset(&verdict, 0xff, sizeof verdict);
  CHECK(ew_evaluate(d, values, n, ew_clock_ms(), &verdict) == EW_OK && verdict.flagged == 0 &&
            verdict.node_count == 0 && verdict.route == NULL,
        "an event with no fields passes");
  CHECK(ew_evaluate(NULL, values, n, 0, &verdict) == EW_ERR_NULL, "evaluate: null handle");
  CHECK(ew_evaluate(d, NULL, n, 0, &verdict) == EW_ERR_NULL, "evaluate: null values");
  CHECK(ew_evaluate(d, values, n, 0, NULL) == EW_ERR_NULL, "evaluate: null verdict");
  CHECK(ew_evaluate(d, values, n - 1, 0, &verdict) == EW_ERR_INVALID &&
            contains(ew_last_error(d), "values given"),
        "evaluate: too few values");
  CHECK(ew_evaluate(d, values, n + ((size_t)1 << 30), 0, &verdict) == EW_ERR_TOO_LARGE,
        "evaluate: too many values");
  size_t ip = 0;
  for (size_t i = 0; i < n; i++) {
    ew_field(d, i, &path, &path_len, &kind);
    if (path_len == 14 && memcmp(path, "destination.ip", 14) == 0) ip = i;
  }
  values[ip].kind = EW_STRING;
  values[ip].str = "\xc3\x28";
  values[ip].len = 2;
  CHECK(ew_evaluate(d, values, n, 0, &verdict) == EW_ERR_UTF8 &&
            contains(ew_last_error(d), "destination.ip is not UTF-8") && verdict.flagged == 0,
        "evaluate: bad UTF-8 value");
  values[ip].str = NULL;
  values[ip].len = 3;
  CHECK(ew_evaluate(d, values, n, 0, &verdict) == EW_ERR_NULL, "evaluate: null string");
  values[ip].str = "x";
  values[ip].len = ((size_t)1 << 20) + 1;
  CHECK(ew_evaluate(d, values, n, 0, &verdict) == EW_ERR_TOO_LARGE, "evaluate: oversize string");
  values[ip].kind = 99;
  CHECK(ew_evaluate(d, values, n, 0, &verdict) == EW_ERR_INVALID, "evaluate: unknown kind");
  values[ip].kind = EW_BLOCKED;
  CHECK(ew_evaluate(d, values, n, 0, &verdict) == EW_ERR_INVALID, "evaluate: blocked value");
  values[ip].kind = EW_ARRAY;
  values[ip].len = n + 2;
  values[ip].count = 5;
  CHECK(ew_evaluate(d, values, n + 4, 0, &verdict) == EW_ERR_INVALID &&
            contains(ew_last_error(d), "outside"),
        "evaluate: array past the values");
  values[ip].len = 0;
  values[ip].count = 1;
  CHECK(ew_evaluate(d, values, n + 4, 0, &verdict) == EW_ERR_INVALID,
        "evaluate: array over the fields");
  values[ip].len = n;
  values[ip].count = 2;
  values[n].kind = EW_STRING;
  values[n].str = "8.8.8.8";
  values[n].len = 7;
  values[n + 1].kind = EW_NUMBER;
  values[n + 1].num = 1.5;
  CHECK(ew_evaluate(d, values, n + 2, 0, &verdict) == EW_OK, "evaluate: an array value");
  values[ip].kind = EW_STRING;
  values[ip].str = "8.8.8.8";
  values[ip].len = 7;
  CHECK(ew_evaluate(d, values, n, ew_clock_ms(), &verdict) == EW_OK, "evaluate: a string");

  /* Metrics. */
  const char *json = NULL;
  size_t json_len = 0;
  CHECK(ew_metrics_json(d, &json, &json_len) == EW_OK && json_len > 0 &&
            memmem(json, json_len, "egresswatch_detector_events_total", 33) != NULL,
        "metrics as JSON");
  CHECK(ew_metrics_json(d, NULL, &json_len) == EW_ERR_NULL, "metrics: null out-pointer");

  /* State: save, load back, a missing file, a damaged one, null and bad paths. */
  char state[2048], junk[2048], missing[2048];
  snprintf(state, sizeof state, "%s/c.state", argv[2]);
  snprintf(junk, sizeof junk, "%s/junk.state", argv[2]);
  snprintf(missing, sizeof missing, "%s/none.state", argv[2]);
  CHECK(ew_save_state(d, state, strlen(state)) == EW_OK, "save state");
  CHECK(ew_load_state(d, state, strlen(state)) == EW_OK, "load it back");
  CHECK(ew_load_state(d, missing, strlen(missing)) == EW_ERR_NOT_FOUND, "missing state file");
  FILE *f = fopen(junk, "wb");
  fputs("not a state file", f);
  fclose(f);
  CHECK(ew_load_state(d, junk, strlen(junk)) == EW_ERR_STATE &&
            contains(ew_last_error(d), "bad magic"),
        "damaged state file");
  CHECK(ew_save_state(d, NULL, 4) == EW_ERR_NULL, "save: null path");
  CHECK(ew_load_state(d, "\xff", 1) == EW_ERR_UTF8, "load: bad UTF-8 path");
  CHECK(ew_save_state(d, "/nonexistent-dir/x/y.state", 26) == EW_ERR_IO, "save: unwritable");
  CHECK(ew_load_state(NULL, state, strlen(state)) == EW_ERR_NULL, "load: null handle");

  CHECK(contains(ew_version(), "."), "version");
  ew_free(d);
  ew_free(NULL);
  ew_string_free(NULL);
  free(values);
  printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
