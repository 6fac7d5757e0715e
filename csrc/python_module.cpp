// Makes lam_ops/_C importable from Python: importing it runs the TORCH_LIBRARY registrations.
// Not part of the CMake library, which C++ users load with torch.ops.load_library.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
