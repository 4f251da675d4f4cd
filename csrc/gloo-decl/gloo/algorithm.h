#pragma once
// See README.md: declarations only, what ProcessGroupGloo.hpp needs.
#include "gloo/context.h"
