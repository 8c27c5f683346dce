#!/bin/sh
# The input arrives on standard input and the output is what goes to standard output;
# the request's method is in UFAAS_METHOD. Messages for the logs go to standard error.
input=$(cat)
echo "echoing $(printf '%s' "$input" | wc -c) bytes" >&2
printf '%s %s\n' "$UFAAS_METHOD" "$input"
