// A plan file for people: the text dump (stable and deterministic, for reading and golden tests), the JSON dump
// (every field) and the comparison of two plans that `inspect` prints.
#pragma once

#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "schema/plan_io.h"

namespace bigplan {

// Every section of the plan as text: header, config, checkpoint, budgets, profile, tensors, blocks, arenas,
// buffers, steps, usage and the predicted times.
void WritePlanText(std::ostream& out, const schema::Plan& plan);

// Every field of the plan, in schema order.
nlohmann::ordered_json PlanToJson(const schema::Plan& plan);

// What differs between plans `a` and `b` (shown as "A: a_name" and "B: b_name"): model, strategy, dtype and run
// shape when they differ, the predicted times, weight bytes per location, arena sizes, and every block whose
// placement differs (matched by name).
void WritePlanDiff(std::ostream& out, const schema::Plan& a, const schema::Plan& b, const std::string& a_name,
                   const std::string& b_name);

}  // namespace bigplan
