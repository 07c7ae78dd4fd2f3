/*
 * egresswatch: the detector's C face (plugin/src/capi.rs), exported by the plugin library
 * libegresswatch_plugin.so beside its stable-ABI root module.
 *
 * Kept by hand. tests/inprocess.rs builds a C program against this header and the library
 * and checks every struct's size and field offsets against the Rust side; the Lua filter in
 * examples/fluent-bit-inprocess/ carries the block between the cdef markers verbatim (LuaJIT's
 * ffi.cdef takes declarations only), checked by the same tests.
 *
 * Use:
 *   1. ew_new(config text, base dir) -> handle (or NULL and a message).
 *   2. ew_field_count / ew_field: the paths the detector reads. For each event, fill one
 *      ew_value per entry, in that order (array elements after them), from the record:
 *        EW_FIELD_VALUE  the value at the path, taking the most nested form first:
 *                        {"a":{"b":{"c":..}}}, {"a":{"b.c":..}}, {"a.b":{"c":..}}, {"a.b.c":..};
 *        EW_FIELD_GROUP  EW_OBJECT when the path or anything below it is present, else absent;
 *        EW_FIELD_NODE   EW_BLOCKED when some form of the path holds a non-object (an array
 *                        too), else EW_OBJECT when some form holds an object, else absent.
 *   3. ew_evaluate(handle, values, count, now_ms, &verdict): flagged or not, the alert fields
 *      the record lacks (top-level nodes keyed by dotted path; each goes into the nearest
 *      existing parent object, in the most nested form, creating what is missing), the route.
 *   4. ew_save_state / ew_load_state (the state file format of `egresswatch run`),
 *      ew_metrics_json, ew_free.
 *
 * Every call checks its pointers and lengths; text must be UTF-8; inputs over the limits in
 * capi.rs are refused (EW_ERR_TOO_LARGE); a panic inside the detector is caught and returned
 * as EW_ERR_PANIC. Calls on one handle are serialised by a lock: use a handle from one thread
 * at a time. Pointers returned (verdict nodes, route, metrics, last error) stay valid until
 * the next call on the same handle; field paths as long as the handle.
 *
 * The clock: ew_evaluate takes the host's clock from the caller (now_ms, milliseconds since
 * the Unix epoch); ew_clock_ms reads the system clock for callers without one.
 */
#ifndef EGRESSWATCH_H
#define EGRESSWATCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ew:cdef-begin */
enum {
  EW_OK = 0,
  EW_ERR_NULL = -1,
  EW_ERR_UTF8 = -2,
  EW_ERR_TOO_LARGE = -3,
  EW_ERR_INVALID = -4,
  EW_ERR_CONFIG = -5,
  EW_ERR_STATE = -6,
  EW_ERR_IO = -7,
  EW_ERR_NOT_FOUND = -8,
  EW_ERR_PANIC = -9
};

enum {
  EW_ABSENT = 0,
  EW_NULL = 1,
  EW_BOOL = 2,
  EW_NUMBER = 3,
  EW_STRING = 4,
  EW_ARRAY = 5,
  EW_OBJECT = 6,
  EW_BLOCKED = 7
};

enum {
  EW_FIELD_VALUE = 0,
  EW_FIELD_GROUP = 1,
  EW_FIELD_NODE = 2
};

typedef struct ew_detector ew_detector;

typedef struct ew_value {
  uint32_t kind;
  uint32_t count;
  const char *str;
  size_t len;
  double num;
} ew_value;

typedef struct ew_node {
  uint32_t kind;
  uint32_t count;
  const char *key;
  size_t key_len;
  const char *str;
  size_t len;
  double num;
} ew_node;

typedef struct ew_verdict {
  int32_t flagged;
  uint32_t node_count;
  const ew_node *nodes;
  const char *route;
  size_t route_len;
} ew_verdict;

ew_detector *ew_new(const char *config, size_t config_len, const char *base_dir,
                    size_t base_dir_len, char **error);
void ew_free(ew_detector *d);
void ew_string_free(char *s);
const char *ew_last_error(const ew_detector *d);
size_t ew_field_count(const ew_detector *d);
int ew_field(const ew_detector *d, size_t index, const char **path, size_t *path_len,
             uint32_t *kind);
int ew_evaluate(ew_detector *d, const ew_value *values, size_t count, int64_t now_ms,
                ew_verdict *out);
int ew_save_state(ew_detector *d, const char *path, size_t path_len);
int ew_load_state(ew_detector *d, const char *path, size_t path_len);
int ew_metrics_json(ew_detector *d, const char **json, size_t *json_len);
int64_t ew_clock_ms(void);
const char *ew_version(void);
/* ew:cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* EGRESSWATCH_H */
