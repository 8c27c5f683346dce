// One step of a pipeline: multiplies `x` by 20.
function main(req, res) {
  res.send({ x: req.body.x * 20 })
}
