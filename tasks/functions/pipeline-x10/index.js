// One step of a pipeline: multiplies `x` by 10.
function main(req, res) {
  res.send({ x: req.body.x * 10 })
}
