// FAAS's shape: the module is the handler, `context` is the parsed input and `cb` answers.
module.exports = (context, cb) => {
  let sum = 0
  for (let num of context.numbers) {
    sum += num
  }
  return cb({ sum: sum })
}
